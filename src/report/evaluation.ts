/** The evaluation part of a report as Markdown. */
import type { EvaluationReport } from '../pipeline/evaluate.js';
import { markdownTable, megabytes, percent, ratio } from './markdown.js';

export function evaluationMarkdown(report: EvaluationReport): string {
  const a = report.accuracy;
  const base = report.baseline;
  const rows = [
    ['top-1', percent(a.top1), percent(a.baseline?.top1)],
    ['top-5', percent(a.top5), percent(a.baseline?.top5)],
    ['file size', megabytes(report.candidate.fileBytes), base && megabytes(base.fileBytes)],
    ['parameters', report.candidate.parameters, base?.parameters],
    ['MACs per image', report.candidate.macs, base?.macs],
  ];
  const parts = [
    `Images: ${report.data.images} from ${report.data.path}` +
      (report.data.skipped ? ` (${report.data.skipped} unreadable, skipped)` : ''),
    markdownTable(['metric', 'model', 'baseline'], rows),
  ];
  if (a.agreement !== undefined) {
    parts.push(
      `Top-1 agreement with the baseline: ${percent(a.agreement)}; ` +
        `mean KL(baseline ‖ model): ${a.meanKl?.toExponential(3)} nats`,
    );
  }
  if (report.latency) {
    parts.push(
      markdownTable(
        ['batch', 'model ms', 'baseline ms', 'time ratio', 'model img/s'],
        report.latency.rows.map((r) => [
          r.batch,
          r.medianMs[0]?.toFixed(2),
          r.medianMs[1]?.toFixed(2),
          ratio(r.ratio),
          r.throughput[0]?.toFixed(1),
        ]),
      ),
      `Latency: ${report.latency.note}; threads ${report.latency.threads}.`,
    );
  }
  return parts.join('\n\n') + '\n';
}
