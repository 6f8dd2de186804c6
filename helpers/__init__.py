"""helpers: the small library behind the notebooks of this paper companion.

Modules are named after the papers' concepts: ``profiles`` (experiment settings),
``datasets`` (splits), ``models``, ``training`` (model + prediction table),
``conductance`` (paper 1, section 3), ``detectors`` and ``baselines`` and
``metrics`` (section 4.1 and reviewers' baselines), ``mutation`` and ``lcr``
(section 4.2), ``joint`` (section 4.3), ``report``.
"""
__version__ = "0.1.0"
