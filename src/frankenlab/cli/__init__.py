"""Command line (typer). Only this package parses argv, prints and picks exit codes."""
