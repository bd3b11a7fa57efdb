"""Structured channel pruning that makes a model fit an SRAM budget (`solve --prune`)."""
