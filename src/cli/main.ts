/**
 * The `vitslim` command line. Each command parses its flags into the same option schemas the
 * library uses, runs the library, and renders results; every VitslimError becomes one line on
 * stderr and a non-zero exit code (a stack trace only with --verbose).
 */
import { Command, CommanderError } from 'commander';
import { CalibrationError, VitslimError, InputError, UnsupportedModelError } from '../errors.js';
import { createLogger, type Logger, type LogLevel } from '../log.js';
import { vitslimVersion } from '../version.js';
import { progressRenderer } from './progress.js';
import { registerInspect } from './inspect.js';
import { registerQuantize } from './quantize.js';
import { registerEval } from './eval.js';
import { registerPrune } from './prune.js';
import { registerCompress } from './compress.js';

/** What every command gets: a logger, a progress renderer and an output stream. */
export interface CliContext {
  logger: Logger;
  onProgress: ReturnType<typeof progressRenderer>;
  /** The result a command was asked for (eval's report, inspect's structure): always printed. */
  print: (text: string) => void;
  /** The closing line of a command that writes an output folder: not printed with --quiet. */
  done: (text: string) => void;
}

export const exitCodes = { ok: 0, error: 1, usage: 2, unsupported: 3, internal: 70 } as const;

function context(program: Command): CliContext {
  const { quiet, verbose } = program.opts<{ quiet?: boolean; verbose?: boolean }>();
  const level: LogLevel = quiet ? 'error' : verbose ? 'debug' : 'info';
  const print = (text: string) => process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
  return {
    logger: createLogger(level, (line) => process.stderr.write(`${line}\n`)),
    onProgress: progressRenderer(!quiet && process.stderr.isTTY === true),
    print,
    done: quiet ? () => {} : print,
  };
}

export function buildProgram(): Command {
  const program = new Command('vitslim')
    .description('Compress trained vision transformers (ONNX) and prove the result on real images')
    .version(vitslimVersion)
    .option('-q, --quiet', 'print only errors (eval and inspect still print their report)')
    .option('--verbose', 'debug logging and stack traces')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  const ctx = () => context(program);
  registerInspect(program, ctx);
  registerQuantize(program, ctx);
  registerEval(program, ctx);
  registerPrune(program, ctx);
  registerCompress(program, ctx);
  for (const sub of program.commands) sub.exitOverride();
  return program;
}

/** Runs the CLI; returns the exit code instead of exiting, so tests can call it. */
export async function main(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv as string[]);
    return exitCodes.ok;
  } catch (error) {
    return reportError(error, argv.includes('--verbose'));
  }
}

function reportError(error: unknown, verbose: boolean): number {
  if (error instanceof CommanderError) {
    // commander has already printed its message (or the help/version text)
    return error.exitCode === 0 ? exitCodes.ok : exitCodes.usage;
  }
  const line = (text: string) => process.stderr.write(`vitslim: ${text}\n`);
  if (error instanceof VitslimError) {
    line(error.message);
    if (verbose && error.stack) process.stderr.write(`${error.stack}\n`);
    if (error instanceof UnsupportedModelError) return exitCodes.unsupported;
    const usersInput = error instanceof InputError || error instanceof CalibrationError;
    return usersInput ? exitCodes.error : exitCodes.internal;
  }
  const message = error instanceof Error ? error.message : String(error);
  const hint = verbose ? '' : ' (run with --verbose for details)';
  line(`internal error: ${message.split('\n')[0]}${hint}`);
  if (verbose && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  return exitCodes.internal;
}
