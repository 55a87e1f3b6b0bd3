"""Reporting: the papermill gate report rendered to HTML (:mod:`.report`), the run folder as a typed
record for its sections (:mod:`.rundata`) and the drawing helpers they share (:mod:`.figures`)."""
