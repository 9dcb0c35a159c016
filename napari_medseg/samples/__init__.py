"""Deterministic sample data (an H&E-like slide, a CT-like volume), each with ground truth."""
