/*
 * The least a qcow2 -> raw convert can do on this machine: no image format, no zero scan, no
 * start-up beyond a C program's. Reads "guest host length" lines (the source's data extents, from
 * qemu-img map) from EXTENTS, creates TARGET at SIZE bytes and copies each extent from SOURCE's host
 * offset to its guest offset with copy_file_range, one after another (the target's inode lock
 * serialises buffered writes to one file anyway). Built and run by bench/copy-floor.bench.ts.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: copy-floor SOURCE TARGET SIZE EXTENTS\n");
    return 2;
  }
  FILE *extents = fopen(argv[4], "r");
  int in = open(argv[1], O_RDONLY | O_CLOEXEC);
  int out = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (!extents || in < 0 || out < 0 || ftruncate(out, strtoll(argv[3], NULL, 0)) != 0) {
    perror("copy-floor: open");
    return 1;
  }
  long long guest, host, length;
  while (fscanf(extents, "%lld %lld %lld", &guest, &host, &length) == 3) {
    loff_t from = host, to = guest;
    while (length > 0) {
      ssize_t n = copy_file_range(in, &from, out, &to, (size_t)length, 0);
      if (n <= 0) {
        perror("copy-floor: copy_file_range");
        return 1;
      }
      length -= n;
    }
  }
  return close(out) == 0 ? 0 : 1;
}
