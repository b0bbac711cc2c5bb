// The hint is inline in include/cprefetch.h; SwiftPM needs a source file for a C target.
#include "cprefetch.h"
