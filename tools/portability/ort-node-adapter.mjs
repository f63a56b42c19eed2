// onnxruntime-node behind the part of onnxruntime-web's API that blip-onnx's engine.js uses
// (InferenceSession.create from bytes, Tensor, env). With BLIP_ORT_MODELS (the folder
// convert_onnx_models_to_ort wrote) and BLIP_PACKAGES, each graph is swapped for its ORT-format
// conversion, found by the sha256 its package's manifest records: ORT mobile's format, end to end.
import * as ortNode from 'onnxruntime-node';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, parse } from 'node:path';

export const { env, Tensor } = ortNode;

function ortFormatModels() {
  const converted = process.env.BLIP_ORT_MODELS;
  if (!converted) return null;
  const packages = process.env.BLIP_PACKAGES;
  const bySha = new Map();
  for (const pkg of readdirSync(packages)) {
    const manifest = JSON.parse(readFileSync(join(packages, pkg, 'blip.json'), 'utf8'));
    for (const g of Object.values(manifest.graphs)) {
      const path = join(converted, pkg, `${parse(g.file).name}.with_runtime_opt.ort`);
      if (existsSync(path)) bySha.set(g.sha256, path);
    }
  }
  return bySha;
}

const ortModels = ortFormatModels();
// As blip-runtime: exact u8 x u8 products on x86 without VNNI (else QInt8 packages lose accuracy).
export const sessionOptions = {
  executionProviders: ['cpu'],
  intraOpNumThreads: 2,
  extra: { session: { x64quantprecision: '1' } },
};

export const InferenceSession = {
  async create(model, { externalData } = {}) {
    if (externalData) throw new Error('the adapter loads graphs from bytes: external data is not supported');
    if (!ortModels) return ortNode.InferenceSession.create(model, sessionOptions);
    const sha = createHash('sha256').update(model).digest('hex');
    const path = ortModels.get(sha);
    if (!path) throw new Error(`no ORT-format conversion of the graph with sha256 ${sha}`);
    return ortNode.InferenceSession.create(path, sessionOptions);
  },
};
