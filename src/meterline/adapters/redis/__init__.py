"""Redis adapters (scale mode): the dedupe store variant measured against PostgreSQL's."""
