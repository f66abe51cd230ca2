"""The application layer: what turns flags into runs, and runs into files and MLflow records.

The library (`models/`, `dataset.py`, `evaluation/`, `unlearn/`, `audits/`) computes: it takes tensors,
models and plain values and returns them. Everything here reads flags, loads and writes
checkpoints and records, holds locks and talks to MLflow, then calls the library:

    forget.py      one unlearning run (mlflow_forget.py, main_forget.py): resolve, execute, score, record
    trainer.py     the training scripts' body (main_baseline.py, main_ideal.py): checkpoints, resume files
    backdoor.py    backdoor cleansing (main_backdoor.py): trigger, poisoning, ASR, its scenario for forget.py
    references.py  the original and ideal models' figures and audits, cached beside their checkpoints
    sweep.py       params files and running them (array_param_file.py, run_params.py, benchmark.py)
    tracking.py    the MLflow store, and the plain-file record of main_forget.py

Dependencies point one way: scripts -> experiments -> library. tests/test_layers.py walks the
imports and fails on one that points back.
"""
