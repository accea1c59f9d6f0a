/*
 * policyd/modules.c - the table of daemon modules (see module.h), in start
 * order.
 */
#include "module.h"

#include <stddef.h>

const struct module *const modules[] = {
    NULL,
};
