"""Operating a served model: summaries of what it sees and says, the reference profile a
version carries, and the tests that compare a window of live summaries with it."""
