"""The web studio: a single-page app served by darkroom at `/`, from static files in this package."""
