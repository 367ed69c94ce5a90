/** Renders the library's progress events as bars on stderr (only on a terminal). */
import cliProgress from 'cli-progress';
import type { ProgressEvent, ProgressListener } from '../log.js';

export function progressRenderer(enabled: boolean): ProgressListener {
  if (!enabled) return () => {};
  const bars = new Map<string, cliProgress.SingleBar>();
  return (event: ProgressEvent) => {
    switch (event.status) {
      case 'start': {
        // nested emitters may start the same stage twice: never leave a bar (and its timer) running
        bars.get(event.stage)?.stop();
        const bar = new cliProgress.SingleBar(
          {
            format: `${event.stage.padEnd(22)} {bar} {value}/{total} {duration_formatted}`,
            stream: process.stderr,
            hideCursor: true,
            clearOnComplete: true,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(Math.max(event.total, 1), 0);
        bars.set(event.stage, bar);
        return;
      }
      case 'advance': {
        const bar = bars.get(event.stage);
        if (event.total > 0) bar?.setTotal(event.total);
        bar?.update(event.done);
        return;
      }
      case 'end':
        bars.get(event.stage)?.stop();
        bars.delete(event.stage);
        return;
    }
  };
}
