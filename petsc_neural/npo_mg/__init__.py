"""NPO-MG: NPO's attention operator (seed 000) computing a multigrid hierarchy at setup.

``network.py`` (the attention transfer network, pure torch), ``features.py``
(what it sees at one level), ``loss.py`` (NPO's losses on the two-grid
cycle), ``train.py`` (``petsc-neural train npo_mg``), ``pc.py``
(:class:`NPOMultigrid`, PETSc's PCMG built from the network's weights).
"""
