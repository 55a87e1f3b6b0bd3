"""Demo: bundled example specs and the data they run on, made from images that ship with scikit-learn."""
