"""The study report: collected from stage outputs only; it computes nothing new but the verdicts."""

from frankenlab.report.collect import RecipeData, collect_recipe
from frankenlab.report.render import render_html, render_markdown

__all__ = ["RecipeData", "collect_recipe", "render_html", "render_markdown"]
