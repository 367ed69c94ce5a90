/** Versions recorded in every report, so a result can be tied to the code that made it. */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

function packageVersion(name: string): string {
  try {
    return (require(`${name}/package.json`) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

export const vitslimVersion = (require('../package.json') as { version: string }).version;

export function versions(): Record<string, string> {
  return {
    vitslim: vitslimVersion,
    onnxruntime: packageVersion('onnxruntime-node'),
    node: process.versions.node,
  };
}
