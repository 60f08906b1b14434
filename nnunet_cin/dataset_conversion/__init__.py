"""Datasets: the MM-WHS 2017 converter and the synthetic two-modality hearts used by the demo and the tests."""
