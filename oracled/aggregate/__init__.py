"""The book of latest quotes per market x source, robust statistics, conversion routes."""

from oracled.aggregate.book import Book, DropReason, Layout
from oracled.aggregate.robust import weighted_quantiles

__all__ = ["Book", "DropReason", "Layout", "weighted_quantiles"]
