/** The CLI run as a child process by the benchmark scripts, timed, its stderr kept. */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { packageRoot } from '../src/data/index.js';

/** Runs `vitslim …args` under this Node; the exit code is -1 when a signal ended it. */
export function runCli(args: string[]): Promise<{ code: number; seconds: number; stderr: string }> {
  const started = performance.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(packageRoot(), 'bin', 'vitslim.js'), ...args], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) =>
      resolve({ code: code ?? -1, seconds: (performance.now() - started) / 1000, stderr }),
    );
  });
}
