"""Paper 2 (Tariq & Zia): counterfactual (CFE) filters and model debugging; ``stages`` runs them on an
experiment.  See :mod:`helpers` for the map."""
