"""The entry points behind `python -m gdsd_lightning COMMAND` (cli.py's table): training, evaluation,
comparison, benchmarks, reports, lm-eval, data and model files. The top layer: a command may
import any module of the package, and nothing below imports a command."""
