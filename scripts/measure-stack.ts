/**
 * Batch-1 speed-up of compressed model files against their original, measured side by side:
 * each candidate is timed in a pair with the original (two sessions alive, interleaved runs),
 * and the pairs are repeated round after round through the candidates, so that a change of the
 * machine's load reaches every candidate alike. The speed-up is the median over rounds of the
 * pair's time ratio; the spread (lowest and highest round) says how far to trust it.
 *
 *   npx tsx scripts/measure-stack.ts out/a/model.onnx out/b/model.onnx
 *   npx tsx scripts/measure-stack.ts --rounds 7 --runs 30 --threads 2 --batch 1 out/*\/model.onnx
 *
 * Flags: --model <onnx> (the original; default ViT-Tiny opset 17), --rounds <n> (default 5),
 * --runs <n> timed runs per model and round (default 20), --threads <n> (default 2),
 * --batch <n> (default 1).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { packageRoot } from '../src/data/index.js';
import { measureLatency } from '../src/eval/latency.js';
import { median } from '../src/eval/metrics.js';
import { markdownTable } from '../src/report/markdown.js';

const fixtures = join(packageRoot(), '..', 'shared', 'fixtures');

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    model: {
      type: 'string',
      default: join(fixtures, 'models', 'vit_tiny_patch16_224', 'model.opset17.onnx'),
    },
    rounds: { type: 'string', default: '5' },
    runs: { type: 'string', default: '20' },
    threads: { type: 'string', default: '2' },
    batch: { type: 'string', default: '1' },
  },
});

async function main(): Promise<void> {
  if (positionals.length === 0) throw new Error('give one or more model files to time');
  const original = new Uint8Array(await readFile(values.model));
  const candidates = await Promise.all(
    positionals.map(async (p) => new Uint8Array(await readFile(p))),
  );
  const ratios: number[][] = candidates.map(() => []);
  const ms: number[][] = candidates.map(() => []);
  const rounds = Number(values.rounds);
  for (let round = 0; round < rounds; round++) {
    for (const [i, candidate] of candidates.entries()) {
      const [row] = await measureLatency([original, candidate], {
        sampleDims: [3, 224, 224],
        batchSizes: [Number(values.batch)],
        threads: Number(values.threads),
        runs: Number(values.runs),
      });
      const [base, time] = row!.medianMs as [number, number];
      ratios[i]!.push(base / time);
      ms[i]!.push(time);
      console.error(`round ${round + 1}/${rounds} ${positionals[i]}: ${(base / time).toFixed(2)}×`);
    }
  }
  const header = ['model', 'speed-up (median)', 'lowest', 'highest', 'ms (median)'];
  const rows = positionals.map((p, i) => {
    const r = ratios[i]!;
    return [
      p,
      `${median(r).toFixed(2)}×`,
      `${Math.min(...r).toFixed(2)}×`,
      `${Math.max(...r).toFixed(2)}×`,
      median(ms[i]!).toFixed(1),
    ];
  });
  console.log(`batch ${values.batch}, ${values.threads} threads, ${rounds} rounds`);
  console.log(markdownTable(header, rows));
}

await main();
