"""Training and evaluation: windows made by the same aligner and featuriser that serving uses."""
