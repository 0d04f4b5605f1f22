"""The model card (README.md) of a tuned model folder: what it was made from, how, and how well it scores."""

from dataclasses import asdict

from pipeline.finetune.record import FinetuneRecord


def model_card(record: FinetuneRecord) -> str:
    s, base, data = record.settings, record.base_model, record.data
    dev = _score(record.dev_accuracy)
    settings = "\n".join(f"| {k} | {v} |" for k, v in asdict(s).items())
    history = "\n".join(f"| {h['epoch']} | {h['loss']:.4f} | {_score(h['dev'])} |" for h in record.history)
    return f"""# {record.name}

A fine-tuned copy of `{base['name']}` made by `bert-pipeline finetune`. It is a plain Hugging Face model folder
(config.json, model.safetensors, tokenizer files): give its path to any command with `--model`.

- **Base model**: `{base['name']}` (weights sha256 `{base['weights_sha256'][:16]}…`, from {base['source']})
- **Data**: `{data.name}` (fingerprint `{data.fingerprint[:16]}…`, split {data.split_origin}, rows
  {', '.join(f"{k} {v}" for k, v in data.split_counts.items())})
- **Method**: `{record.method}`: {record.method_description}
- **Training rows**: {record.rows['train']}; selection on {record.selection}; test rows {record.rows['test']},
  scored once, at the end
- **Run**: {record.epochs} epochs (weights of epoch {record.best_epoch} kept), {record.steps} steps,
  {record.seconds:.0f}s on {record.device} ({s.dtype})
- **Key**: `{record.key}` (data fingerprint + base model files + every setting below)

| metric | value |
|---|---|
| dev accuracy | {dev} |
| test accuracy | {record.test_accuracy:.4f} |

| epoch | train loss | dev accuracy |
|---|---|---|
{history}

| setting | value |
|---|---|
{settings}

The classification head (a linear layer on the `{s.pooling}` pooling, exported as a logistic regression) lives in
the run folder `{record.run or 'the runs folder'}`; `bert-pipeline predict --run <that folder>` uses both.
"""


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
