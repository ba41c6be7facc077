// Types for concord-client/codemirror.

import type { Annotation, ChangeSet, Extension } from '@codemirror/state';
import type { ConcordProvider, TextChange } from './index.js';

/** CodeMirror 6 extension: the editor shows and edits the provider's text; peers' cursors are drawn. */
export declare function concord(provider: ConcordProvider, options?: { presence?: boolean }): Extension;

/** Annotation on transactions that carry remote changes. */
export declare const remoteChange: Annotation<boolean>;

/** The engine's sequential changes as one change set over a document of `length`. */
export declare function toChangeSet(changes: readonly TextChange[], length: number): ChangeSet;
