"""Labels: immutable label versions, the label/review stage, hard-case sampling and the Label Studio round trip."""
