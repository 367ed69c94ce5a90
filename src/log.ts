/**
 * Logging and progress for library code. The library never prints: it calls a logger and emits
 * typed progress events; the CLI decides how to render them. The default logger is silent.
 */

export type LogLevel = 'silent' | 'error' | 'warn' | 'info' | 'debug';

const rank: Record<LogLevel, number> = { silent: 0, error: 1, warn: 2, info: 3, debug: 4 };

export interface Logger {
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
}

/** A progress event of a named long stage (calibration, evaluation, search). */
export type ProgressEvent =
  | { status: 'start'; stage: string; total: number }
  | { status: 'advance'; stage: string; done: number; total: number }
  | { status: 'end'; stage: string };

export type ProgressListener = (event: ProgressEvent) => void;

export const silentLogger: Logger = {
  error: () => {},
  warn: () => {},
  info: () => {},
  debug: () => {},
};

export const noProgress: ProgressListener = () => {};

/** A logger that writes to a sink (stderr in the CLI) at or above the given level. */
export function createLogger(level: LogLevel, sink: (line: string) => void): Logger {
  const at = (l: LogLevel) => (message: string) => {
    if (rank[l] <= rank[level]) sink(l === 'info' ? message : `${l}: ${message}`);
  };
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

/**
 * `logger` with only its errors kept: for a second pass over images whose warnings (unlabelled,
 * unreadable) the first pass has already given.
 */
export function errorsOnly(logger: Logger | undefined): Logger {
  return logger ? { ...silentLogger, error: (message) => logger.error(message) } : silentLogger;
}

/** What long-running library functions accept to report their work. */
export interface Reporting {
  logger?: Logger;
  onProgress?: ProgressListener;
}
