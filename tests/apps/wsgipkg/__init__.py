"""A package with a wsgi module, laid out as Django's startproject lays out a project."""
