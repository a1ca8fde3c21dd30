"""Evaluation runners (AlpacaEval, reward-model comparison) built on bon's run directories."""
