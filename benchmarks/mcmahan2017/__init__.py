"""McMahan et al. 2017 ("Communication-Efficient Learning of Deep Networks from
Decentralized Data"), Table 2, reproduced cell by cell: ``python -m
benchmarks.mcmahan2017 run`` (see ``__main__.py``)."""
