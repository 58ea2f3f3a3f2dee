"""Evaluating a pretrained encoder: linear probes, fine-tuning and their metrics/reports.

Jobs read a training workdir or an export (``ecgjax.inference``); none imports the
training loop.
"""
