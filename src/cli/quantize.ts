import type { Command } from 'commander';
import type { CliContext } from './main.js';

export function registerQuantize(_program: Command, _context: () => CliContext): void {}
