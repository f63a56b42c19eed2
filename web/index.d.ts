/** Encoded image bytes (PNG, JPEG, WebP, GIF, BMP), decoded and preprocessed by blip-onnx's Rust code. */
export type ImageBytes = Uint8Array | ArrayBuffer | ArrayBufferView | Blob;

export interface InitOptions {
  /** Folder (URL) with onnxruntime-web's ort-wasm-simd-threaded.{mjs,wasm}; default: this package's dist/ort/. */
  wasmPaths?: string;
  /** wasm threads; default: up to 4 when the page is cross-origin isolated, else 1. */
  numThreads?: number;
  /** blip-onnx's wasm module where it cannot be fetched from next to index.js (Node: its bytes). */
  wasm?: Uint8Array | ArrayBuffer | WebAssembly.Module | URL | string;
}

export interface Progress {
  file: string;
  loaded: number;
  total: number;
  /** Served from Cache Storage (no download). */
  cached: boolean;
}

export interface LoadOptions extends InitOptions {
  onProgress?: (p: Progress) => void;
  /** 'auto' (default): WebGPU when the package is made for it (its manifest's runtimes) and the
   *  browser has an adapter (with shader-f16 for FP16 graphs), else wasm. 'webgpu': an error when
   *  it cannot be had. The page must load an onnxruntime-web build with WebGPU (`export-web` does
   *  when a package is made for it). */
  executionProvider?: 'auto' | 'webgpu' | 'wasm';
}

export interface CaptionOptions {
  /** Default "a picture of " (stripped from the caption); "" for none. */
  prompt?: string;
  /** Beam width, default 3; 1 is greedy. */
  beams?: number;
  /** Sampling instead of beam search (temperature, topK, topP, seed). */
  sample?: boolean;
  temperature?: number;
  /** 0 disables top-k. */
  topK?: number;
  /** Default 0.9. */
  topP?: number;
  seed?: number;
  /** Tokens, prompt included; default 20. */
  maxLength?: number;
  /** Tokens, prompt included; default 5. */
  minLength?: number;
  lengthPenalty?: number;
  repetitionPenalty?: number;
}

export type CaptionResult =
  | { caption: string; tokens: number[]; score: number | null }
  | { error: string };

export interface AnswerOptions {
  /** Default 3; 1 is greedy. */
  beams?: number;
  maxLength?: number;
  minLength?: number;
  maxQuestionTokens?: number;
  maskQuestionPadding?: boolean;
}

export interface AnswerResult {
  question: string;
  answer: string;
  tokens: number[];
}

export interface RankedAnswers {
  question: string;
  answer: string;
  candidates: { answer: string; score: number }[];
}

export interface RankImagesOptions {
  /** Hits returned, best first (default 10, at most 1000), as `blip-onnx search -k`. */
  k?: number;
  /** ITM rerank of the ITC top `rerank` (default 16); 0: ITC only. */
  rerank?: number;
  /** The images' embeddings from embedImages (else computed). */
  embeddings?: number[][];
}

export interface Hit {
  rank: number;
  /** Index into the images given. */
  index: number;
  score: number;
  itc: number;
  itm: number | null;
}

export interface ItmResult {
  text: string;
  matchProbability: number;
  itmLogits: [number, number];
  itcSimilarity: number;
}

export function init(options?: InitOptions): Promise<{ numThreads: number; crossOriginIsolated: boolean }>;

export class Blip {
  static load(url: string, options?: LoadOptions): Promise<Blip>;
  readonly head: 'caption' | 'retrieval' | 'vqa';
  /** The execution provider running this package. */
  readonly executionProvider: 'webgpu' | 'wasm';
  /** Why that provider, in words. */
  readonly executionProviderReason: string;
  readonly manifest: Record<string, unknown>;
  caption(images: ImageBytes | ImageBytes[], options?: CaptionOptions): Promise<CaptionResult[]>;
  embedImages(images: ImageBytes | ImageBytes[]): Promise<number[][]>;
  embedTexts(texts: string | string[]): Promise<number[][]>;
  itm(image: ImageBytes, texts: string | string[]): Promise<ItmResult[]>;
  rankImages(text: string, images: ImageBytes[], options?: RankImagesOptions): Promise<Hit[]>;
  answer(image: ImageBytes, questions: string | string[], options?: AnswerOptions): Promise<AnswerResult[]>;
  rankAnswers(
    image: ImageBytes,
    questions: string | string[],
    answers: string[],
    options?: { k?: number; maxQuestionTokens?: number },
  ): Promise<RankedAnswers[]>;
}
