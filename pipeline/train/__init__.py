"""Stage two: cached vectors -> heads -> metrics -> reports. Never runs the encoder, never imports torch.

heads (the head registry), metrics (scores with intervals), runs (a trained head on disk and its record),
report (Markdown, plots, summary tables), stage (train every head on every pooling of a cache).
"""
