/** The data module: preprocessing, decoding, datasets, sampling and the default assets. */
export {
  interpolations,
  preprocessConfigSchema,
  preprocessOverridesSchema,
  resolvePreprocess,
  type Interpolation,
  type PreprocessConfig,
} from './preprocess.js';
export {
  centreCropOffset,
  cropWindow,
  imageExtensions,
  isImageFile,
  loadImage,
  readPixels,
  resizedSize,
  toChannels,
  writeTensor,
  type PixelImage,
} from './image.js';
export { resizeWindow, type ResizeWindow } from './resample.js';
export {
  checkDatasetFolder,
  openDataset,
  type Batch,
  type BatchOptions,
  type Dataset,
  type DatasetStats,
  type OpenDatasetOptions,
} from './dataset.js';
export { ItemDataset, readAhead, type ItemDatasetInit, type ItemSource } from './item-dataset.js';
export { classIndex, findClassList, readClassList, type ClassList } from './classes.js';
export { formatIdx, parseIdx, readIdx, type IdxArray } from './idx.js';
export { mulberry32, sampleDataset, samplePositions } from './sample.js';
export { findDefaults, packageRoot, type Defaults } from './defaults.js';
