#ifndef CFILESYSTEM_H
#define CFILESYSTEM_H

/// Atomically swaps two existing paths (Linux renameat2 with RENAME_EXCHANGE).
/// Returns 0, or -1 with errno set (ENOSYS or EINVAL where the kernel or file system cannot).
int cfs_exchange(const char *first, const char *second);

#endif
