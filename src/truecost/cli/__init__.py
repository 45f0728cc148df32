"""The composition root for humans: reads settings, builds objects, prints."""
