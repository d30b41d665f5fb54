"""Studies: sweeps (ofat, grid, random, tpe), repeats with statistics, and the LR range test.

A study is a YAML file: a base config plus a search space over dotted config keys. It lives in
an Optuna storage (SQLite in the study directory by default, PostgreSQL for many machines), so
any number of workers can join it and a killed study continues where it stopped.
"""
