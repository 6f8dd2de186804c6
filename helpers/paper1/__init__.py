"""Paper 1 (arXiv 1910.00387): conductance, its detector, model mutation, LCR and the joint classifier;
``stages`` runs them on an experiment.  See :mod:`helpers` for the map."""
