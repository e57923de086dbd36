"""oracled: a price oracle daemon for margin and liquidation engines.

Flow, one way only: sources -> quotes -> aggregate -> gates -> publish.
"""

__version__ = "0.1.0"
