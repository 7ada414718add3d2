package dispatch

// StarvedOf is starvedOf, for the package's external tests.
var StarvedOf = starvedOf
