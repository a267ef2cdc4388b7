/** The script-tag build: the global Sessiond, whose get(options) is getClient. */
export { getClient as get } from './index.js';
