#ifndef SAELABEL_CPREFETCH_H
#define SAELABEL_CPREFETCH_H

// A cache hint Swift has no spelling for: collect's per-feature pass asks for the lines a firing window will
// write (histogram bin, top-heap record) one feature ahead, so their misses overlap the next row's work.
static inline void saelabel_prefetch_for_write(const void *address) { __builtin_prefetch(address, 1, 3); }

#endif
