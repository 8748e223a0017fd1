"""The rows of the assessment's metrics table. Importing this module imports nothing (the MLflow layer's vocabulary
re-exports these names in the registry plugin's request threads).

>>> METRIC_ROWS
('original', 'unlearned', 'retrain')
"""

#: The model before unlearning, the unlearned model and the reference retrained without the forget set: the rows
#: that the acceptance gate compares (and the metric-key prefixes of an unlearning run).
METRIC_ROWS = (ORIGINAL_ROW, UNLEARNED_ROW, RETRAIN_ROW) = ("original", "unlearned", "retrain")
