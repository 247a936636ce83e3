"""Compression for deployment: post-training quantization, pruning, and the deployment table.

- `source`: the model to compress, from a full folder, an adapter folder (merged on the fly) or a
  name, with one clear error for a folder that holds no weights;
- `layers`: the decoder blocks of a causal or seq2seq model, and a copy of it with only some of them
  (depth pruning and the layer-dropped distillation student share it);
- `quantize`: int8 weight-only, int8 dynamic and int4 weight-only through transformers' `TorchAoConfig`;
- `prune`: magnitude, Wanda (calibration activations), N:M patterns, and depth pruning by block influence;
- `measure`: the deployment table (size on disk, peak RAM, tokens/s, toxicity, perplexity, agreement
  with the teacher) written as metrics.json and a report section.

Distillation is a supervised method: `rlhfkit.methods.distill`. torchao is imported only on the
quantization paths (and quieted there; see `rlhfkit.runtime.quiet_torchao_import`).
"""
