"""Stage one: texts -> encoder -> poolings -> cache. The stage that runs the encoder for inference.

By concern, one way (pyproject.toml's import contracts check it):
  stage.py       the cached, resumable embed as a short plan: key, plan the shards, run them, write the manifest
  ray_engine.py  the same shards computed by a Ray actor pool;  shards.py  computing and writing one shard
  ray_rows.py    a file read, checked and fingerprinted by Ray tasks, its texts left in the object store
  encoder.py     tokenise -> token-budget batches -> runtime -> poolings (Encoder.encode, the one path)
  settings.py    EncoderOptions (as asked) -> EncoderConfig (resolved once: device, dtype, runtime, budget)
  runtimes/      the Runtime seam: a registry of runtimes (torch, openvino), chosen once, made by one factory
  device.py      device and dtype picks;  pooling.py  the pooling registry;  batching.py  batcher and padding
  sources/       model sources: a registry that finds a --model's files and identifies them
"""
