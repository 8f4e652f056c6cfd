"""Tasks: what turns a backbone into a usable model (separator, segmentor, restorer ...), plus their data glue.

Import the task modules directly (``from ssmzoo.tasks.separation import Separator``); nothing is imported here so
that ``import ssmzoo`` stays light.
"""
