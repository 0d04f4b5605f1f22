"""Stage one: texts -> encoder -> poolings -> cache. The only stage that runs the encoder (and imports torch).

models (find and identify a model's files), device (device and dtype), encoder (tokenise, batch, forward),
pooling (the pooling registry), stage (the cached, resumable embed), ray_engine (the same stage on Ray Data).
"""
