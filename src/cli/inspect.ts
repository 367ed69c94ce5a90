/** `vitslim inspect model.onnx`: what was recognised in the graph. */
import type { Command } from 'commander';
import { openModel } from '../pipeline/model.js';
import { describeStructure } from '../vit/index.js';
import type { CliContext } from './main.js';

export function registerInspect(program: Command, context: () => CliContext): void {
  program
    .command('inspect')
    .description('show the recognised structure: blocks, heads, widths, parameters, MACs')
    .argument('<model>', 'ONNX model file')
    .option('--layers', 'also list every linear layer and attention MatMul')
    .option('--json', 'print the structure map as JSON')
    .action(async (path: string, flags: { layers?: boolean; json?: boolean }) => {
      const ctx = context();
      const { structure } = await openModel(path);
      ctx.print(
        flags.json
          ? JSON.stringify(structure, null, 2)
          : describeStructure(structure, { layers: flags.layers }),
      );
    });
}
