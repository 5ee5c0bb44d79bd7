/* Error codes, names and messages: generated from CRAFT_ERRNO_MAP. */
#include "craft.h"

const char *craft_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
#define CRAFT__ERR_MSG(name, value, msg) \
    case CRAFT_##name:                   \
        return msg;
        CRAFT_ERRNO_MAP(CRAFT__ERR_MSG)
#undef CRAFT__ERR_MSG
    default:
        return "unknown error";
    }
}

const char *craft_err_name(int code)
{
    switch (code) {
    case 0:
        return "OK";
#define CRAFT__ERR_NAME(name, value, msg) \
    case CRAFT_##name:                    \
        return "CRAFT_" #name;
        CRAFT_ERRNO_MAP(CRAFT__ERR_NAME)
#undef CRAFT__ERR_NAME
    default:
        return "CRAFT_EUNKNOWN";
    }
}
