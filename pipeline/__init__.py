"""bert-pipeline: embed texts once with a BERT-family encoder, cache several poolings, train cheap heads on them.

The flow runs one way: data -> encoder -> pooling -> cache -> heads -> metrics -> report.
"""

__version__ = "0.1.0"
